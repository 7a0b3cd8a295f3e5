{{- define "kvferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kvferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kvferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvferry
{{- end }}

{{- define "kvferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvferry.authSecretName" -}}
{{- default (printf "%s-auth" (include "kvferry.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "kvferry.isCuda" -}}
{{- if hasPrefix "cuda" .Values.server.device }}true{{- end }}
{{- end }}

{{- define "kvferry.terminationGrace" -}}
{{- $grace := int (ceil .Values.server.shutdownGrace) }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed server.shutdownGrace (%v), or Kubernetes kills the server mid-drain" .Values.terminationGracePeriodSeconds .Values.server.shutdownGrace) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add $grace 15 }}
{{- end }}
{{- end }}

{{/* `kvferry serve` flags, one per value: the chart adds nothing the CLI does not have. */}}
{{- define "kvferry.args" -}}
- serve
- --host=0.0.0.0
- --port={{ .Values.server.grpcPort | int64 }}
- --metrics-port={{ .Values.server.metricsPort | int64 }}
- --device={{ .Values.server.device }}
- --num-blocks={{ .Values.server.numBlocks | int64 }}
- --block-tokens={{ .Values.server.blockTokens | int64 }}
- --row-bytes={{ .Values.server.rowBytes | int64 }}
- --default-window-tokens={{ .Values.server.defaultWindowTokens | int64 }}
- --bootstrap-timeout={{ .Values.server.bootstrapTimeout }}
- --stall-timeout={{ .Values.server.stallTimeout }}
- --retention={{ .Values.server.retention }}
- --lease-timeout={{ .Values.server.leaseTimeout }}
- --reconnect-grace={{ .Values.server.reconnectGrace }}
- --fence-timeout={{ .Values.server.fenceTimeout }}
- --local-calls={{ .Values.server.localCalls }}
- --keepalive={{ .Values.server.keepalive }}
- --keepalive-timeout={{ .Values.server.keepaliveTimeout }}
- --keepalive-min-ping={{ .Values.server.keepaliveMinPing }}
{{- with .Values.server.mooncake }}
- --mooncake={{ . }}
{{- end }}
{{- with .Values.server.mooncakeHost }}
- --mooncake-host={{ . }}
{{- end }}
{{- with .Values.server.mooncakeDevice }}
- --mooncake-device={{ . }}
{{- end }}
{{- if eq .Values.server.device "cpu" }}
- --shm-dir=/dev/shm
{{- end }}
- --max-transfers={{ .Values.server.maxTransfers | int64 }}
- --max-streams={{ .Values.server.maxStreams | int64 }}
- --shutdown-grace={{ .Values.server.shutdownGrace }}
- --max-message-bytes={{ .Values.server.maxMessageBytes | int64 }}
- --max-metadata-bytes={{ .Values.server.maxMetadataBytes | int64 }}
- --require-transfer-secrets={{ .Values.server.requireTransferSecrets }}
{{- if .Values.auth.enabled }}
- --auth-token-file=/etc/kvferry/auth/token
{{- if .Values.auth.operatorToken }}
- --admin-token-file=/etc/kvferry/auth/admin
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
- --tls-cert=/etc/kvferry/tls/tls.crt
- --tls-key=/etc/kvferry/tls/tls.key
{{- if .Values.tls.clientAuth }}
- --tls-client-ca=/etc/kvferry/tls/ca.crt
{{- end }}
{{- end }}
{{- range .Values.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "kvferry.probe" -}}
{{- if .root.Values.tls.enabled }}
{{- /* The kubelet's gRPC probe cannot speak TLS: the same health states over plain HTTP. */}}
httpGet:
  path: {{ if eq .service "liveness" }}/healthz{{ else }}/readyz{{ end }}
  port: metrics
{{- else }}
grpc:
  port: {{ .root.Values.server.grpcPort }}
  service: {{ .service | quote }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}
