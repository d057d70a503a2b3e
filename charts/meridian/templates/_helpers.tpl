{{/* Names and labels shared by every template. */}}

{{- define "meridian.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
meridian.fullname is "<release>-<chart>", or the release name alone when it
already contains the chart name, cut to 63 characters (a DNS label).
*/}}
{{- define "meridian.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meridian.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meridian.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meridian.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meridian.labels" -}}
helm.sh/chart: {{ include "meridian.chart" . }}
{{ include "meridian.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meridian
{{- end -}}

{{- define "meridian.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meridian.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meridian.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* meridian.apiSocketDir is the directory of the API socket, mounted from the host. */}}
{{- define "meridian.apiSocketDir" -}}
{{- dir .Values.api.socket -}}
{{- end -}}

{{/*
meridian.secretsByNamespace maps each namespace to the sorted, de-duplicated
names of the Secrets meridiand may get there: the TCP MD5 keys of
bgp.peers plus rbac.extraSecrets. Rendered as YAML; read it with fromYaml.
*/}}
{{- define "meridian.secretsByNamespace" -}}
{{- $by := dict -}}
{{- range .Values.bgp.peers -}}
{{- if .password -}}
{{- $names := get $by .password.namespace | default list -}}
{{- $_ := set $by .password.namespace (append $names .password.name) -}}
{{- end -}}
{{- end -}}
{{- range .Values.rbac.extraSecrets -}}
{{- $names := get $by .namespace | default list -}}
{{- $_ := set $by .namespace (append $names .name) -}}
{{- end -}}
{{- range $ns, $names := $by -}}
{{- $_ := set $by $ns ($names | uniq | sortAlpha) -}}
{{- end -}}
{{- toYaml $by -}}
{{- end -}}
