{{/* Labels of the `helm test` pods: never the controller's selector labels, or its Services
would send traffic to a test pod. */}}
{{- define "wslb.testLabels" -}}
helm.sh/chart: {{ include "wslb.chart" . }}
app.kubernetes.io/name: {{ include "wslb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/part-of: wslb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
