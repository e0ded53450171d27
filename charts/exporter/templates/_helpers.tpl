{{/*
Names, labels and the shared pieces of every pod spec.
*/}}

{{- define "exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exporter.fullname" -}}
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

{{- define "exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "exporter.labels" -}}
helm.sh/chart: {{ include "exporter.chart" . }}
{{ include "exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "exporter.componentSelectorLabels" -}}
{{ include "exporter.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "exporter.componentLabels" -}}
{{ include "exporter.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "exporter.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* ServiceAccount name of a component: (dict "ctx" $ "component" "api") */}}
{{- define "exporter.serviceAccountName" -}}
{{- $sa := index .ctx.Values.serviceAccount .component -}}
{{- if .ctx.Values.serviceAccount.create -}}
{{ default (printf "%s-%s" (include "exporter.fullname" .ctx) .component) $sa.name }}
{{- else -}}
{{ default "default" $sa.name }}
{{- end }}
{{- end }}

{{- define "exporter.secretName" -}}
{{- default (printf "%s-secrets" (include "exporter.fullname" .)) .Values.secrets.name }}
{{- end }}

{{/* Worker grace period: explicit, or the app's shutdown grace plus 30 s for cleanup. */}}
{{- define "exporter.workerTerminationGracePeriodSeconds" -}}
{{- $grace := int .Values.config.worker.shutdownGraceS -}}
{{- if kindIs "invalid" .Values.worker.terminationGracePeriodSeconds -}}
{{ add $grace 30 }}
{{- else -}}
{{- $tgps := int .Values.worker.terminationGracePeriodSeconds -}}
{{- if le $tgps $grace -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed config.worker.shutdownGraceS (%d), or Kubernetes kills jobs the worker is still allowed to finish" $tgps $grace) -}}
{{- end -}}
{{ $tgps }}
{{- end }}
{{- end }}

{{/* The large exports' queue: config.redis.largeQueueName, or "<queueName>:large". */}}
{{- define "exporter.largeQueueName" -}}
{{- default (printf "%s:large" .Values.config.redis.queueName) .Values.config.redis.largeQueueName -}}
{{- end }}

{{/* The worker pools, as a YAML list: the default one (worker values) and, when
largeWorker.enabled, the large exports' pool, whose values override the worker's. */}}
{{- define "exporter.workerPools" -}}
- component: worker
  args: ["worker"]
  maxJobs: {{ .Values.config.worker.maxJobs }}
  keda: {{ .Values.keda.enabled }}
  values:
    {{- toYaml .Values.worker | nindent 4 }}
{{- if .Values.largeWorker.enabled }}
{{- $l := .Values.largeWorker }}
- component: worker-large
  args: ["worker", "--queue", "large"]
  maxJobs: {{ $l.maxJobs }}
  keda: {{ and .Values.keda.enabled $l.keda.enabled }}
  values:
    {{- toYaml (mergeOverwrite (deepCopy .Values.worker) (omit $l "enabled" "maxJobs" "keda")) | nindent 4 }}
{{- end }}
{{- end }}

{{/* Non-secret settings, identical on every pod. */}}
{{- define "exporter.env" -}}
{{ include "exporter.envFor" (dict "ctx" . "maxJobs" .Values.config.worker.maxJobs) }}
{{- end }}

{{/* The same, with a pool's own max_jobs: (dict "ctx" $ "maxJobs" N) */}}
{{- define "exporter.envFor" -}}
{{- $maxJobs := .maxJobs -}}
{{- with .ctx -}}
{{- $c := .Values.config -}}
- name: EXPORTER_ENVIRONMENT
  value: {{ $c.environment | quote }}
- name: EXPORTER_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: EXPORTER_LOG_JSON
  value: {{ $c.logJson | quote }}
- name: EXPORTER_POSTGRES__POOL_MAX_SIZE
  value: {{ $c.postgres.poolMaxSize | quote }}
- name: EXPORTER_REDIS__QUEUE_NAME
  value: {{ $c.redis.queueName | quote }}
- name: EXPORTER_REDIS__REQUIRE_NOEVICTION
  value: {{ $c.redis.requireNoeviction | quote }}
- name: EXPORTER_REDIS__LARGE_QUEUE_NAME
  value: {{ include "exporter.largeQueueName" . | quote }}
# Size-aware routing only while a pool serves the large queue (nothing would run them).
- name: EXPORTER_EXPORTS__ROUTING_ENABLED
  value: {{ and .Values.largeWorker.enabled $c.exports.routingEnabled | quote }}
- name: EXPORTER_EXPORTS__LARGE_THRESHOLD_ROWS
  value: {{ $c.exports.largeThresholdRows | quote }}
- name: EXPORTER_DYNAMO__ENDPOINT_URL
  value: {{ $c.dynamo.endpointUrl | quote }}
- name: EXPORTER_DYNAMO__REGION
  value: {{ $c.dynamo.region | quote }}
- name: EXPORTER_DYNAMO__TABLE_PREFIX
  value: {{ $c.dynamo.tablePrefix | quote }}
- name: EXPORTER_SMTP__HOST
  value: {{ $c.smtp.host | quote }}
- name: EXPORTER_SMTP__PORT
  value: {{ $c.smtp.port | quote }}
- name: EXPORTER_SMTP__START_TLS
  value: {{ $c.smtp.startTls | quote }}
- name: EXPORTER_SMTP__FROM_ADDRESS
  value: {{ $c.smtp.fromAddress | quote }}
- name: EXPORTER_JWT__ISSUER
  value: {{ $c.jwt.issuer | quote }}
- name: EXPORTER_JWT__AUDIENCE
  value: {{ $c.jwt.audience | quote }}
- name: EXPORTER_API__HOST
  value: "0.0.0.0"
- name: EXPORTER_API__PORT
  value: {{ $c.api.port | quote }}
- name: EXPORTER_API__PUBLIC_URL
  value: {{ $c.api.publicUrl | quote }}
{{- if .Values.ingress.enabled }}
# The ALB appends the client's address to X-Forwarded-For: sign-in throttling keys on it.
- name: EXPORTER_AUTH__TRUSTED_PROXY_HOPS
  value: "1"
{{- end }}
- name: EXPORTER_WORKER__MAX_JOBS
  value: {{ $maxJobs | quote }}
- name: EXPORTER_WORKER__JOB_TIMEOUT_S
  value: {{ $c.worker.jobTimeoutS | quote }}
- name: EXPORTER_WORKER__SHUTDOWN_GRACE_S
  value: {{ $c.worker.shutdownGraceS | quote }}
- name: EXPORTER_EXPORTS__MAX_PER_DAY
  value: {{ $c.exports.maxPerDay | quote }}
- name: EXPORTER_S3__BUCKET
  value: {{ $c.s3.bucket | quote }}
- name: EXPORTER_S3__ENDPOINT_URL
  value: {{ $c.s3.endpointUrl | quote }}
- name: EXPORTER_S3__REGION
  value: {{ $c.s3.region | default $c.dynamo.region | quote }}
- name: EXPORTER_S3__SSE
  value: {{ $c.s3.sse | quote }}
{{- range $c.extraEnv }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret settings of one component, by reference only: (dict "ctx" $ "component" "api") */}}
{{- define "exporter.secretEnv" -}}
{{- $secret := include "exporter.secretName" .ctx -}}
{{- $component := .component -}}
{{- range .ctx.Values.secrets.env }}
{{- if has $component .components }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .name }}
      optional: {{ .optional }}
{{- end }}
{{- end }}
{{- end }}

{{/* Zone and host spread of one component: (dict "ctx" $ "component" "api" "spread" .Values.api.topologySpread) */}}
{{- define "exporter.topologySpread" -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: {{ .spread.zoneWhenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "exporter.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
  # Count only the pods of the current ReplicaSet, so a rollout keeps the spread.
  matchLabelKeys:
    - pod-template-hash
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: {{ .spread.hostWhenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "exporter.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}

{{/* NetworkPolicy egress rule to the cluster DNS: networkPolicy values */}}
{{- define "exporter.egress.dns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .dns.podLabels | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}

{{/* NetworkPolicy egress rule to CIDRs on one TCP port: (dict "cidrs" LIST "port" N) */}}
{{- define "exporter.egress.cidrs" -}}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .port }}
{{- end }}
