{{- define "shopfloor.labels" -}}
app.kubernetes.io/name: shopfloor-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- define "shopfloor.selector" -}}
app.kubernetes.io/name: shopfloor-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
