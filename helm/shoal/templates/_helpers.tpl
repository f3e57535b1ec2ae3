{{/* Chart name, truncated for label values. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name. Kept short: StatefulSet pod DNS names are built on it. */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shoal.tracker.name" -}}{{ include "shoal.fullname" . }}-tracker{{- end -}}
{{- define "shoal.agent.name" -}}{{ include "shoal.fullname" . }}-agent{{- end -}}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* host:port for an address that may be an env reference like $(HOST_IP). */}}
{{- define "shoal.hostport" -}}
{{- if .root.Values.ipv6 -}}[{{ .host }}]:{{ .port }}{{- else -}}{{ .host }}:{{ .port }}{{- end -}}
{{- end -}}

{{/* The DNS name of tracker replica .i (also the DNS name in its certificate). */}}
{{- define "shoal.tracker.host" -}}
{{- $t := include "shoal.tracker.name" .root -}}
{{- printf "%s-%d.%s.%s.svc" $t (int .i) $t .root.Release.Namespace -}}
{{- end -}}

{{- define "shoal.agent.secretName" -}}
{{- default (printf "%s-tls" (include "shoal.agent.name" .)) .Values.tls.agentSecretName -}}
{{- end -}}
{{- define "shoal.tracker.secretName" -}}
{{- default (printf "%s-tls" (include "shoal.tracker.name" .)) .Values.tls.trackerSecretName -}}
{{- end -}}

{{/*
A configuration map rendered as TOML: each key of the top map is a section; a map
becomes [section] with key = value lines, a list of maps becomes [[section]] blocks.
Values are written with toJson, whose strings, numbers, booleans and arrays are valid
TOML. Sections and keys come out sorted.
*/}}
{{- define "shoal.toml" -}}
{{- range $section, $body := . }}
{{- if kindIs "map" $body }}
[{{ $section }}]
{{- range $k, $v := $body }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{ else if kindIs "slice" $body }}
{{- range $item := $body }}
[[{{ $section }}]]
{{- range $k, $v := $item }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* TLS volume for a component: .root, .component ("agent" | "tracker"). */}}
{{- define "shoal.tls.volume" -}}
- name: tls
{{- if eq .root.Values.tls.mode "certManagerCSI" }}
  csi:
    driver: csi.cert-manager.io
    readOnly: true
    volumeAttributes:
      csi.cert-manager.io/issuer-name: {{ required "tls.certManager.issuerName is required with tls.mode=certManagerCSI" .root.Values.tls.certManager.issuerName | quote }}
      csi.cert-manager.io/issuer-kind: {{ .root.Values.tls.certManager.issuerKind | quote }}
      csi.cert-manager.io/issuer-group: {{ .root.Values.tls.certManager.issuerGroup | quote }}
      {{- if eq .component "agent" }}
      # The first DNS name is the peer id.
      csi.cert-manager.io/dns-names: "${POD_NAME}"
      {{- else }}
      csi.cert-manager.io/dns-names: {{ printf "${POD_NAME}.%s.${POD_NAMESPACE}.svc" (include "shoal.tracker.name" .root) | quote }}
      {{- end }}
      # Agents are both TLS servers (QUIC) and clients (peers, tracker).
      csi.cert-manager.io/key-usages: "digital signature,key encipherment,server auth,client auth"
      csi.cert-manager.io/duration: {{ .root.Values.tls.certManager.duration | quote }}
      csi.cert-manager.io/fs-group: "10001"
{{- else if eq .root.Values.tls.mode "secret" }}
  secret:
    {{- if eq .component "agent" }}
    secretName: {{ include "shoal.agent.secretName" .root }}
    {{- else }}
    secretName: {{ include "shoal.tracker.secretName" .root }}
    {{- end }}
    defaultMode: 0440
{{- else }}
{{- fail "tls.mode must be secret or certManagerCSI" }}
{{- end }}
{{- end -}}

{{/* CA path inside the TLS volume. */}}
{{- define "shoal.tls.ca" -}}
{{- if eq .Values.tls.mode "certManagerCSI" -}}/etc/shoal/tls/ca.crt{{- else -}}/etc/shoal/tls/ca.pem{{- end -}}
{{- end -}}

{{- define "shoal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shoal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
