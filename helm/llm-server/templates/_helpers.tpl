{{/* Names, labels and the config -> environment mapping shared by the chart's templates. */}}

{{- define "llm-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-server.fullname" -}}
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

{{/* The headless Service's name (<fullname>-headless, kept within 63 characters). */}}
{{- define "llm-server.headlessName" -}}
{{- printf "%s-headless" (include "llm-server.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "llm-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-server.labels" -}}
helm.sh/chart: {{ include "llm-server.chart" . }}
{{ include "llm-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{- define "llm-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llm-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The API-key Secret's name: the user's existing one or the chart's. Empty when auth is off. */}}
{{- define "llm-server.apiKeySecret" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if .Values.apiKeys.keys }}
{{- printf "%s-api-keys" (include "llm-server.fullname" .) }}
{{- end }}
{{- end }}

{{/*
A value as the server's flag parser reads it. Helm holds YAML numbers as float64, whose default
formatting turns 16777216 into "1.6777216e+07"; whole numbers are printed as integers instead.
*/}}
{{- define "llm-server.scalar" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The GGUF path the server loads: config.model, else the model volume's file, else none (image default). */}}
{{- define "llm-server.modelPath" -}}
{{- if not (kindIs "invalid" .Values.config.model) }}
{{- .Values.config.model }}
{{- else if ne .Values.model.volume "none" }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.file }}
{{- end }}
{{- end }}

{{/*
The ConfigMap's data: LLM_<FLAG> for every non-null entry of .Values.config (camelCase -> UPPER_SNAKE,
the same rule as service/config.py's env_name), the model path resolved as above.
*/}}
{{- define "llm-server.configEnv" -}}
{{- range $key, $value := .Values.config }}
{{- if and (ne $key "model") (not (kindIs "invalid" $value)) }}
{{ printf "LLM_%s" ($key | snakecase | upper) }}: {{ include "llm-server.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- with include "llm-server.modelPath" . }}
LLM_MODEL: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds: derived from the drain grace, or an explicit value checked against it. */}}
{{- define "llm-server.terminationGrace" -}}
{{- $floor := add (int .Values.shutdown.preStopSleepSeconds) (int (ceil .Values.config.graceS)) }}
{{- if kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds }}
{{- add $floor (int .Values.shutdown.marginSeconds) }}
{{- else }}
{{- $explicit := int .Values.shutdown.terminationGracePeriodSeconds }}
{{- if le $explicit $floor }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.graceS (%d): the pod would be killed mid-drain" $explicit $floor) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* True when the pod needs a GPU. */}}
{{- define "llm-server.wantsGpu" -}}
{{- if eq .Values.config.backend "cuda" }}true{{ end }}
{{- end }}

{{/* A gRPC health probe body (native), or tcpSocket when TLS is on (the kubelet's gRPC probe has no TLS). */}}
{{- define "llm-server.probe" -}}
{{- $root := index . 0 }}
{{- $p := index . 1 }}
{{- if $root.Values.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ int $root.Values.config.port }}
  service: {{ $p.service | quote }}
{{- end }}
periodSeconds: {{ $p.periodSeconds }}
failureThreshold: {{ $p.failureThreshold }}
timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end }}

{{/* Environment entries from Secrets: LLM_API_KEYS (secretKeyRef) and the TLS file paths. */}}
{{- define "llm-server.secretEnv" -}}
{{- with include "llm-server.apiKeySecret" . }}
- name: LLM_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.apiKeys.secretKey }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: LLM_TLS_CERT
  value: {{ printf "%s/tls.crt" .Values.tls.mountPath | quote }}
- name: LLM_TLS_KEY
  value: {{ printf "%s/tls.key" .Values.tls.mountPath | quote }}
{{- end }}
{{- end }}
