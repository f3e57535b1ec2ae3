//! Serving a client's range far past what a fill has from an origin `Range` request
//! of its own, so a cold `Range: bytes=-100` of a large object costs the origin's
//! time to first byte, not the time the fill needs to reach the end.
//!
//! A range is served ahead when its first chunk is not done and lies [`SLACK`] or
//! more chunks past the fill's frontier ([`Fill::frontier`]); nearer ranges wait for
//! the fill, which is about to have them. The request asks for exactly the client's
//! range with `If-Range` and is checked like a chunk repair ([`super::version`]):
//! the answer must be a `206` of exactly that range of the same complete length with
//! the version's validator. Any other answer (a `200` from an origin that ignores
//! `Range`, the object changed, a short body, a refused connection) is not relayed:
//! the response goes on from the fill at the byte it reached, so the client waits
//! for the fill as it would have without this request, and never gets wrong bytes.
//! The bytes stream to the client as they arrive. When the fill's frontier passes
//! the client's position (a slow client, a fast fill), the origin request is dropped
//! and the rest is read from the fill, whose chunks are verified.
//!
//! Cannot: store what it fetches (the chunk ids are not known until the fill hashes
//! those chunks; the fill stores them then), so the origin sends those bytes twice;
//! check them against chunk ids (the origin is trusted for them as for a plain
//! fill's stream, under the validator check); serve a registry object whose fill
//! has no fetch URL; ask peers (a swarm fill's far range comes from the origin
//! even when peers hold it; only the fill's chunks come from them).
//! `X-Shoal-Origin-Reason` still names the fill's reason (the head is sent before
//! the choice is made); `shoal_origin_fetches_total{reason="range_ahead"}` counts
//! these requests.

use std::sync::Arc;

use shoal_proto::ByteRange;

use super::read::{Frames, Serve};
use super::version::Changed;
use super::{Fill, FillError, ObjectCache};
use crate::metrics::Source;
use crate::origin::next_data;
use crate::origin::reason::FetchReason;

/// Chunks past the fill's frontier a range may start and still wait for the fill.
pub(crate) const SLACK: usize = 2;

/// How an ahead stream ended without an error.
enum End {
    /// Every byte sent, or the client left.
    Done,
    /// The fill's frontier passed this offset: the rest comes from the fill.
    Caught(u64),
}

/// The fill `range` of `s` should be served ahead of, if any (see the module docs).
pub(super) fn ahead_of(s: &Serve, range: ByteRange) -> Option<Arc<Fill>> {
    let Serve::Fill(f) = s else { return None };
    if range.is_empty() || (f.upstream.is_none() && super::is_registry_key(&f.url)) {
        return None;
    }
    let first = f.layout.chunks_for(range).start;
    let far = first >= f.frontier().saturating_add(SLACK);
    (far && !f.has(first)).then(|| f.clone())
}

impl ObjectCache {
    /// Sends `range` of the fill `f` (served as `s`) into `tx` from an origin range
    /// request, switching to the fill when it catches up; an error is sent as the
    /// last item (the client's response is cut).
    pub(super) async fn serve_ahead(&self, s: Serve, f: Arc<Fill>, range: ByteRange, tx: Frames) {
        let mut pos = range.start;
        match self.ahead(&f, range, &tx, &mut pos).await {
            Ok(End::Done) => {}
            Ok(End::Caught(pos)) => {
                tracing::debug!(url = %f.url, pos, "fill caught up with a range served ahead");
                self.stream(s, ByteRange::new(pos, range.end), tx).await;
            }
            Err(e) => {
                // What was sent was checked; the fill has the rest of this version.
                tracing::info!(url = %f.url, start = range.start, end = range.end, pos, error = %e,
                    "range ahead of the fill failed; the rest comes from the fill");
                self.stream(s, ByteRange::new(pos, range.end), tx).await;
            }
        }
    }

    /// Relays the origin's answer for `range`, `pos` the first byte not sent yet.
    async fn ahead(
        &self,
        f: &Fill,
        range: ByteRange,
        tx: &Frames,
        pos: &mut u64,
    ) -> Result<End, FillError> {
        let reason = FetchReason::RangeAhead;
        let url = f.url.as_str();
        let resp = self
            .range_response(
                url,
                f.upstream.as_ref(),
                &f.repr,
                range.start..range.end,
                f.layout.size,
                reason,
                false,
            )
            .await?;
        let mut body = resp.into_body();
        let timeout = self.inner.origin.read_timeout();
        while *pos < range.end {
            let chunk = f.layout.chunks_for(ByteRange::new(*pos, range.end)).start;
            if f.frontier() > chunk {
                return Ok(End::Caught(*pos));
            }
            let Some(d) = next_data(&mut body, timeout, url).await? else {
                return Err(crate::origin::OriginError::Upstream {
                    host: url.to_owned(),
                    detail: format!(
                        "range response ended after {} of {} bytes",
                        *pos - range.start,
                        range.len()
                    ),
                }
                .into());
            };
            let n = d.len() as u64;
            if *pos + n > range.end {
                return Err(self.changed(url, Changed::Longer(range.len())));
            }
            self.inner.metrics.origin_relayed(reason, n);
            self.inner.metrics.served(Source::Origin, n);
            if tx.send(Ok(http_body::Frame::data(d))).await.is_err() {
                return Ok(End::Done);
            }
            *pos += n;
        }
        // A body longer than its range is the origin's fault even when the client
        // has every byte it asked for.
        if next_data(&mut body, timeout, url).await?.is_some() {
            return Err(self.changed(url, Changed::Longer(range.len())));
        }
        Ok(End::Done)
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::{ChunkId, Layout};

    use super::*;
    use crate::object::Repr;

    const CHUNK: u64 = 16384;

    fn fill(url: &str) -> Arc<Fill> {
        let layout = Layout::new(10 * CHUNK, CHUNK as u32).unwrap();
        Arc::new(Fill::new(url.into(), layout, Repr::default()))
    }

    fn at(chunk: u64) -> ByteRange {
        ByteRange::new(chunk * CHUNK + 10, chunk * CHUNK + 20)
    }

    #[test]
    fn only_ranges_well_past_the_frontier_go_ahead() {
        let f = fill("http://o/x");
        let s = Serve::Fill(f.clone());
        assert!(ahead_of(&s, at(0)).is_none());
        assert!(ahead_of(&s, at(1)).is_none());
        assert!(ahead_of(&s, at(2)).is_some());
        assert!(ahead_of(&s, at(9)).is_some());
        assert!(ahead_of(&s, ByteRange::new(9 * CHUNK, 9 * CHUNK)).is_none());
        for i in 0..4 {
            f.complete(i, ChunkId::of(b"x"), Source::Origin, None, None);
        }
        assert_eq!(f.frontier(), 4);
        assert!(ahead_of(&s, at(5)).is_none());
        assert!(ahead_of(&s, at(6)).is_some());
        // A chunk already there (a swarm fill's, out of order) is read from the fill.
        f.complete(8, ChunkId::of(b"y"), Source::Peer, None, None);
        assert!(ahead_of(&s, at(8)).is_none());
        assert!(ahead_of(&s, at(9)).is_some());
    }

    #[test]
    fn registry_keys_without_a_fetch_url_wait() {
        let s = Serve::Fill(fill("oci:sha256:ab"));
        assert!(ahead_of(&s, at(9)).is_none());
    }
}
