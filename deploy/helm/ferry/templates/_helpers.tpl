{{/* Names and labels. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Pod template labels: the selector's plus the chart's bookkeeping ones. */}}
{{- define "ferry.podLabels" -}}
{{ include "ferry.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ferry.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "ferry.fullname" .)) -}}
{{- end -}}

{{/* A service's in-cluster gRPC target: dns:/// on its headless Service, so gRPC sees every pod. */}}
{{- define "ferry.target" -}}
{{- printf "dns:///%s-%s:%v" (include "ferry.fullname" .root) .component (index .root.Values .component).grpcPort -}}
{{- end -}}

{{/* The OTLP collector's host and port, from otlp.endpoint (http://host:port). */}}
{{- define "ferry.otlpHost" -}}
{{- (split ":" (urlParse .Values.otlp.endpoint).host)._0 -}}
{{- end -}}
{{- define "ferry.otlpPort" -}}
{{- (split ":" (urlParse .Values.otlp.endpoint).host)._1 | default "4317" -}}
{{- end -}}

{{/* The Ferry service components, space-separated: each service, and the upload and job lanes when on. */}}
{{- define "ferry.components" -}}
gateway{{ if .Values.gatewayUploads.enabled }} gateway-uploads{{ end }} inference{{ if .Values.inferenceJobs.enabled }} inference-jobs{{ end }} jobs store
{{- end -}}

{{/* The service (services/<name>, FERRY_<NAME>_ settings) a component runs: the upload lane is a
gateway, the job lane an inference. */}}
{{- define "ferry.program" -}}
{{- if eq . "gateway-uploads" }}gateway{{ else if eq . "inference-jobs" }}inference{{ else }}{{ . }}{{ end -}}
{{- end -}}

{{/* The jobs runner's inference: the job lane when on, else the inference pods callers use. */}}
{{- define "ferry.jobsInferenceTarget" -}}
{{- if .Values.inferenceJobs.enabled -}}
{{- printf "dns:///%s-inference-jobs:%v" (include "ferry.fullname" .) .Values.inference.grpcPort -}}
{{- else -}}
{{- include "ferry.target" (dict "root" . "component" "inference") -}}
{{- end -}}
{{- end -}}

{{/* A component's values, set into .out: (dict "root" $ "component" "gateway-uploads" "out" dict).
The upload lane takes the gateway's ports, maxInflight and env (its own env on top). */}}
{{- define "ferry.componentValues" -}}
{{- $values := .root.Values -}}
{{- if eq .component "gateway-uploads" -}}
{{- $_ := mergeOverwrite .out (deepCopy $values.gatewayUploads) (pick $values.gateway "grpcPort" "metricsPort" "maxInflight") -}}
{{- $_ := set .out "env" (merge (deepCopy ($values.gatewayUploads.env | default dict)) ($values.gateway.env | default dict)) -}}
{{- else if eq .component "inference-jobs" -}}
{{- /* The job lane is the inference program with inference's values; its own (inferenceJobs) on top. */}}
{{- $_ := mergeOverwrite .out (deepCopy $values.inference) (deepCopy $values.inferenceJobs) -}}
{{- $_ := set .out "env" (merge (deepCopy ($values.inferenceJobs.env | default dict)) ($values.inference.env | default dict)) -}}
{{- else -}}
{{- $_ := mergeOverwrite .out (deepCopy (index $values .component)) -}}
{{- end -}}
{{- end -}}

{{/* Env every Ferry service reads: (dict "root" $ "component" "gateway" "values" <its values>). */}}
{{- define "ferry.commonEnv" -}}
{{- $p := printf "FERRY_%s_" (upper (include "ferry.program" .component)) -}}
{{- $svc := .values -}}
- name: {{ $p }}GRPC_HOST
  value: "0.0.0.0"
- name: {{ $p }}GRPC_PORT
  value: {{ $svc.grpcPort | quote }}
- name: {{ $p }}METRICS_PORT
  value: {{ $svc.metricsPort | quote }}
- name: {{ $p }}LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: {{ $p }}OTLP_ENDPOINT
  value: {{ .root.Values.otlp.endpoint | quote }}
- name: FERRY_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
# The image has no home directory; torch and Python caches go to the writable /tmp.
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- range $name, $value := $svc.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level pieces every Ferry pod shares. */}}
{{- define "ferry.podCommon" -}}
serviceAccountName: {{ include "ferry.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ferry.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* A cores setting (services/common/cpus.py: `last`, `1`, `2-3`), only when set: (dict "name"
"FERRY_JOBS_CPUS" "cores" <the value>). A number (`--set jobs.cpus=1`) is a core too, 0 included. */}}
{{- define "ferry.cpusEnv" -}}
{{- $cores := toString .cores -}}
{{- if ne $cores "" }}
- name: {{ .name }}
  value: {{ $cores | quote }}
{{- end }}
{{- end -}}

{{/* Env of one service beyond the common fields: (dict "root" $ "component" "gateway" "values" <its values>). */}}
{{- define "ferry.serviceEnv" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- if eq (include "ferry.program" .component) "gateway" -}}
- name: FERRY_GATEWAY_INFERENCE_TARGET
  value: {{ include "ferry.target" (dict "root" $root "component" "inference") | quote }}
- name: FERRY_GATEWAY_STORE_TARGET
  value: {{ include "ferry.target" (dict "root" $root "component" "store") | quote }}
- name: FERRY_GATEWAY_JOBS_TARGET
  value: {{ include "ferry.target" (dict "root" $root "component" "jobs") | quote }}
- name: FERRY_GATEWAY_NATS_URL
  value: {{ $root.Values.nats.url | quote }}
- name: FERRY_GATEWAY_NATS_STREAM_REPLICAS
  value: {{ $root.Values.nats.streamReplicas | quote }}
- name: FERRY_GATEWAY_SHUTDOWN_DELAY_S
  value: {{ $root.Values.shutdownDelaySeconds | quote }}
- name: FERRY_GATEWAY_MAX_INFLIGHT
  value: {{ $v.maxInflight | quote }}
{{- with $root.Values.results.url }}
{{- /* The gateway reads result files and executed notebooks; jobs writes them: one store. */}}
- name: FERRY_GATEWAY_RESULTS_URL
  value: {{ . | quote }}
{{- end }}
{{- if eq .component "gateway-uploads" }}
{{- /* The upload lane serves only bulk bytes (uploads, downloads, large OIP calls): counted among the gateways that split each key's
  rate limit, it would halve every serving gateway's share (services/gateway/peers.py). */}}
- name: FERRY_GATEWAY_SHARES_RATE_LIMITS
  value: "false"
{{- end }}
{{- else if eq (include "ferry.program" .component) "inference" -}}
- name: FERRY_INFERENCE_MODELS
  value: {{ $v.models | quote }}
- name: FERRY_INFERENCE_DEVICE
  value: {{ $v.device | quote }}
- name: FERRY_INFERENCE_MAX_BATCH_SIZE
  value: {{ $v.maxBatchSize | quote }}
- name: FERRY_INFERENCE_MAX_BATCH_DELAY_MS
  value: {{ $v.maxBatchDelayMs | quote }}
- name: FERRY_INFERENCE_TORCH_THREADS
  value: {{ $v.torchThreads | quote }}
- name: FERRY_INFERENCE_SHUTDOWN_DELAY_S
  value: {{ $root.Values.shutdownDelaySeconds | quote }}
{{- /* Models loaded, unloaded or given another default version at runtime are kept in NATS KV
  (ferry_models): every replica converges to them and a restarted pod starts with them. */}}
- name: FERRY_INFERENCE_NATS_URL
  value: {{ $root.Values.nats.url | quote }}
- name: FERRY_INFERENCE_NATS_STREAM_REPLICAS
  value: {{ $root.Values.nats.streamReplicas | quote }}
{{- include "ferry.cpusEnv" (dict "name" "FERRY_INFERENCE_JOB_CPUS" "cores" (dig "jobCpus" "" $v)) }}
{{- else if eq .component "jobs" -}}
- name: FERRY_JOBS_NATS_URL
  value: {{ $root.Values.nats.url | quote }}
- name: FERRY_JOBS_NATS_STREAM_REPLICAS
  value: {{ $root.Values.nats.streamReplicas | quote }}
- name: FERRY_JOBS_SHUTDOWN_DELAY_S
  value: {{ $root.Values.shutdownDelaySeconds | quote }}
- name: FERRY_JOBS_INFERENCE_TARGET
  value: {{ include "ferry.jobsInferenceTarget" $root | quote }}
- name: FERRY_JOBS_STORE_TARGET
  value: {{ include "ferry.target" (dict "root" $root "component" "store") | quote }}
{{- with $root.Values.results.url }}
- name: FERRY_JOBS_RESULTS_URL
  value: {{ . | quote }}
{{- end }}
{{- include "ferry.cpusEnv" (dict "name" "FERRY_JOBS_CPUS" "cores" (dig "cpus" "" $v)) }}
{{- else if eq .component "store" -}}
- name: FERRY_STORE_NATS_URL
  value: {{ $root.Values.nats.url | quote }}
- name: FERRY_STORE_NATS_STREAM_REPLICAS
  value: {{ $root.Values.nats.streamReplicas | quote }}
- name: FERRY_STORE_SHUTDOWN_DELAY_S
  value: {{ $root.Values.shutdownDelaySeconds | quote }}
- name: FERRY_STORE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ferry.secretName" $root }}
      key: database-url
- name: FERRY_STORE_DEV_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "ferry.secretName" $root }}
      key: dev-api-key
      optional: true
{{- end }}
{{- end -}}

{{/* A NetworkPolicy peer: the pods of one component, (dict "root" $ "component" "gateway"). */}}
{{- define "ferry.peer" -}}
- podSelector:
    matchLabels:
      {{- include "ferry.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Whether the jobs runners scale with KEDA: jobs.keda.enabled true, or "auto" (the default)
and KEDA's API is on the cluster: a cluster without KEDA's CRDs would refuse the ScaledObject and
fail the whole install. Offline rendering (helm template) knows no cluster's APIs: say true there. */}}
{{- define "ferry.kedaActive" -}}
{{- $wanted := toString .Values.jobs.keda.enabled -}}
{{- if or (eq $wanted "true") (and (eq $wanted "auto") (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) -}}
true
{{- end -}}
{{- end -}}

{{/* The public listener's TLS (a filter chain's transport_socket), from the Secret named by
envoy.tls.secretName (a kubernetes.io/tls Secret: tls.crt, tls.key), mounted at /etc/envoy/tls. */}}
{{- define "ferry.envoyTls" -}}
{{- if .Values.envoy.tls.secretName }}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
    common_tls_context:
      # HTTP/2 for native gRPC clients, HTTP/1.1 for REST.
      alpn_protocols: [h2, http/1.1]
      tls_certificates:
        - certificate_chain: {filename: /etc/envoy/tls/tls.crt}
          private_key: {filename: /etc/envoy/tls/tls.key}
{{- end }}
{{- end -}}

{{/* The heap Envoy's overload manager watches, in bytes (envoy.maxHeapMiB, below its memory limit). */}}
{{- define "ferry.envoyHeapBytes" -}}
{{- mul (int .Values.envoy.maxHeapMiB) 1048576 -}}
{{- end -}}

{{/* Unary calls one Envoy lets through to all gateways at once (gateway.maxInflight per gateway, for
as many gateways as there can be): devstack/envoy.py's circuit breaker on the gateway cluster. */}}
{{- define "ferry.envoyMaxRequests" -}}
{{- $g := .Values.gateway -}}
{{- mul (int $g.maxInflight) (int (ternary $g.hpa.maxReplicas $g.replicas $g.hpa.enabled)) -}}
{{- end -}}

{{/* Envoy's worker threads: envoy.concurrency, or else its CPU limit rounded up (at least 1); empty
without either (Envoy's default: one per node core). */}}
{{- define "ferry.envoyConcurrency" -}}
{{- $cpu := toString (dig "limits" "cpu" "" .Values.envoy.resources) -}}
{{- if gt (int .Values.envoy.concurrency) 0 -}}
{{- int .Values.envoy.concurrency -}}
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (int (trimSuffix "m" $cpu)) 999) 1000) -}}
{{- else if $cpu -}}
{{- max 1 (int (ceil (float64 $cpu))) -}}
{{- end -}}
{{- end -}}
