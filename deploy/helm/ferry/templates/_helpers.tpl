{{/* The release's name for its objects: "ferry" for a release named ferry. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The control plane's in-cluster service name. */}}
{{- define "ferry.controlService" -}}
{{ include "ferry.fullname" . }}-control
{{- end -}}

{{/* How relays reach the control plane. */}}
{{- define "ferry.controlUrl" -}}
{{- if .Values.relays.controlUrl -}}
{{ .Values.relays.controlUrl }}
{{- else -}}
https://{{ include "ferry.controlService" . }}.{{ .Release.Namespace }}.svc:{{ .Values.control.port }}
{{- end -}}
{{- end -}}

{{/* SQLite on a volume: one replica and no PostgreSQL. */}}
{{- define "ferry.controlUsesSqlite" -}}
{{- if and (eq (int .Values.control.replicas) 1) (not .Values.control.database.secret) -}}true{{- end -}}
{{- end -}}

{{- define "ferry.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
{{- end -}}

{{- define "ferry.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
