{{/* Names, labels and images shared by every template. */}}

{{- define "bpfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's prefix for object names; cluster-scoped objects use it too, so two releases never collide. */}}
{{- define "bpfleet.fullname" -}}
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

{{- define "bpfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "operator"). */}}
{{- define "bpfleet.labels" -}}
helm.sh/chart: {{ include "bpfleet.chart" .ctx }}
{{ include "bpfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bpfleet
{{- end }}

{{/* The labels a workload selects its pods by; they never change across upgrades. */}}
{{- define "bpfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bpfleet.operator.fullname" -}}
{{- printf "%s-operator" (include "bpfleet.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "bpfleet.agent.fullname" -}}
{{- printf "%s-agent" (include "bpfleet.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "bpfleet.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "bpfleet.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bpfleet.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "bpfleet.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. Call with (dict "image" .Values.x.image "ctx" $). */}}
{{- define "bpfleet.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}

{{/* host:port of the agent's /metrics and /healthz ([v6]:port for an IPv6 address). */}}
{{- define "bpfleet.agent.metricsAddress" -}}
{{- $host := .Values.agent.metrics.bindAddress }}
{{- if contains ":" $host }}
{{- printf "[%s]:%v" $host .Values.agent.metrics.port }}
{{- else }}
{{- printf "%s:%v" $host .Values.agent.metrics.port }}
{{- end }}
{{- end }}

{{/* Where kubelet reaches the agent's /healthz: the agent is on the host network, so kubelet's
probe runs on the node too; a wildcard bind answers on loopback. */}}
{{- define "bpfleet.agent.probeHost" -}}
{{- $host := .Values.agent.metrics.bindAddress }}
{{- if eq $host "0.0.0.0" }}127.0.0.1{{- else if eq $host "::" }}::1{{- else }}{{ $host }}{{- end }}
{{- end }}

{{/* The agent's ServiceAccount as the API server names its tokens' user. */}}
{{- define "bpfleet.agent.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "bpfleet.agent.serviceAccountName" .) }}
{{- end }}
