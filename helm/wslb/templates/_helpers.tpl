{{/*
Names and labels. <fullname> is the release name unless fullnameOverride is set; the config
Service `<fullname>-config` is the name docs/resources.md gives the config channel.
*/}}

{{- define "wslb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* At most 55 characters, so that `<fullname>-metrics` is still a DNS label; never
truncated, because data planes find the config channel by this name. */}}
{{- define "wslb.fullname" -}}
{{- $name := default .Release.Name .Values.fullnameOverride -}}
{{- if gt (len $name) 55 -}}
{{- fail (printf "the full name %q is longer than 55 characters: set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "wslb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wslb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wslb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "wslb.labels" -}}
helm.sh/chart: {{ include "wslb.chart" . }}
{{ include "wslb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: wslb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wslb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "wslb.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of the controller and of the data planes it creates. */}}
{{- define "wslb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "wslb.configService" -}}
{{- printf "%s-config" (include "wslb.fullname" .) -}}
{{- end -}}

{{- define "wslb.configTLSSecret" -}}
{{- printf "%s-config-tls" (include "wslb.fullname" .) -}}
{{- end -}}

{{/* The names in imagePullSecrets, comma-separated, for the data-plane pods. */}}
{{- define "wslb.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}
