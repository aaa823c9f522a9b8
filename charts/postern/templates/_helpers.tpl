{{/*
The chart name, or nameOverride.
*/}}
{{- define "postern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of this release's objects: fullnameOverride, else the release name
when it already contains the chart name (`helm install postern ...` gives
`postern`), else `<release>-<chart>`. At most 63 characters (a DNS label).
*/}}
{{- define "postern.fullname" -}}
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

{{- define "postern.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "postern.labels" -}}
helm.sh/chart: {{ include "postern.chart" . }}
{{ include "postern.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: postern
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
What the Deployment, the Services and the PodDisruptionBudget select pods by:
never changes across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "postern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "postern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "postern.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding cookie_secret, signing_key and (optionally)
idp_client_secret: the user's existingSecret, or the chart's own.
*/}}
{{- define "postern.secretName" -}}
{{- default (include "postern.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "postern.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Where the pod mounts its settings and secrets; config.yaml refers to these.
*/}}
{{- define "postern.configDir" -}}/etc/postern{{- end }}
{{- define "postern.secretsDir" -}}/var/run/secrets/postern{{- end }}

{{/*
An EC P-256 private key for signing_key. sprig's genPrivateKey "ecdsa" makes
a P-256 key in SEC1 PEM ("BEGIN EC PRIVATE KEY"), which Postern takes as it
takes PKCS#8. tests/helm_chart.rs runs Postern with a key made here.
*/}}
{{- define "postern.generateSigningKey" -}}
{{- genPrivateKey "ecdsa" }}
{{- end }}

{{/*
What the controller reads and writes in the namespaces it watches: exactly
the rules of the ClusterRole postern in manifests/rbac.yaml, which
tests/k8s_rbac.rs shows minimal and complete (tests/helm_chart.rs checks
the chart renders the same rules).
*/}}
{{- define "postern.rbacRules" -}}
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses/status]
  verbs: [patch]
- apiGroups: [postern.dev]
  resources: [routes]
  verbs: [get, list, watch]
- apiGroups: [postern.dev]
  resources: [routes/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}

{{/*
IngressClasses are cluster-scoped: this ClusterRole is needed also when
watchNamespaces limits the rest (manifests/rbac.yaml's
postern-ingressclasses).
*/}}
{{- define "postern.ingressClassRules" -}}
- apiGroups: [networking.k8s.io]
  resources: [ingressclasses]
  verbs: [list, watch]
{{- end }}

{{/*
With watchNamespaces, what the controller needs in its own namespace when it
does not watch it: the leader Lease and a get of its Service (for
publish_service). A subset of postern.rbacRules.
*/}}
{{- define "postern.releaseNamespaceRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
- apiGroups: [""]
  resources: [services]
  verbs: [get]
{{- end }}
