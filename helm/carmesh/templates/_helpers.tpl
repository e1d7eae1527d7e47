{{/*
The daemons, in one table: values key -> Python module, resource suffix, environment prefix,
mesh identity (its certificate's common name) and the components allowed to call its gRPC port
("external": any source, subject to networkPolicy.gatewayFrom). DESIGN.md says who calls whom.
*/}}
{{- define "carmesh.daemons" -}}
gateway: {module: gateway, component: gateway, prefix: CARMESH_GATEWAY_, callers: [external]}
registryGateway: {module: registry_gateway, component: registry-gateway, prefix: CARMESH_REGISTRY_, callers: [gateway, detector, trainer, training]}
detector: {module: detector, component: detector, prefix: CARMESH_DETECTOR_, callers: [gateway]}
ingestor: {module: ingestor, component: ingestor, prefix: CARMESH_INGESTOR_, callers: [gateway]}
featureService: {module: feature_service, component: feature-service, prefix: CARMESH_FEATURE_, callers: [gateway, trainer, training]}
trainer: {module: trainer, component: trainer, prefix: CARMESH_TRAINER_, callers: [gateway]}
tracker: {module: tracker, component: tracker, prefix: CARMESH_TRACKER_, callers: [gateway]}
{{- end -}}

{{- define "carmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Resource name of a component: (dict "root" $ "component" "detector") */}}
{{- define "carmesh.componentName" -}}
{{- printf "%s-%s" (include "carmesh.fullname" .root) .component -}}
{{- end -}}

{{- define "carmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: carmesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "carmesh.selectorLabels" . }}
{{- end -}}

{{- define "carmesh.selectorLabels" -}}
app.kubernetes.io/name: carmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* <repository>/<name>:<tag>[-gpu], as `make images` tags them: (dict "root" $ "image" .image "gpu" bool) */}}
{{- define "carmesh.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if eq (toString $tag) "latest" -}}{{- fail "image tags carry the version: `latest` is not allowed" -}}{{- end -}}
{{- printf "%s/%s:%s%s" .root.Values.image.repository .image.name (toString $tag) (ternary "-gpu" "" .gpu) -}}
{{- end -}}

{{- define "carmesh.address" -}}
{{- printf "%s:%v" (include "carmesh.componentName" .) .port -}}
{{- end -}}

{{/*
Mesh and public TLS settings: the ONE place naming their environment variables and files.
(dict "root" $ "key" "detector" "prefix" "CARMESH_DETECTOR_") -> YAML map of settings.
*/}}
{{- define "carmesh.tlsSettings" -}}
{{- if .root.Values.meshTLS.enabled }}
mesh_ca_file: /etc/carmesh/mesh/ca.crt
mesh_cert_file: /etc/carmesh/mesh/tls.crt
mesh_key_file: /etc/carmesh/mesh/tls.key
{{- else }}
mesh_plaintext: true
{{- end }}
{{- if eq .key "gateway" }}
{{- if .root.Values.publicTLS.enabled }}
public_cert_file: /etc/carmesh/public/tls.crt
public_key_file: /etc/carmesh/public/tls.key
{{- else }}
public_plaintext: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Secret holding a component's mesh certificate (ca.crt, tls.crt, tls.key). */}}
{{- define "carmesh.meshSecretName" -}}
{{- printf "%s-mesh-tls" (include "carmesh.componentName" .) -}}
{{- end -}}

{{- define "carmesh.publicSecretName" -}}
{{- .Values.publicTLS.existingSecret | default (printf "%s-gateway-public-tls" (include "carmesh.fullname" .)) -}}
{{- end -}}

{{- define "carmesh.apiKeysSecretName" -}}
{{- .Values.gateway.apiKeys.existingSecret | default (printf "%s-gateway-api-keys" (include "carmesh.fullname" .)) -}}
{{- end -}}

{{- define "carmesh.checkpointClaim" -}}
{{- .Values.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "carmesh.fullname" .)) -}}
{{- end -}}

{{/* A setting's value as its environment variable carries it: lists comma-joined, whole floats as integers. */}}
{{- define "carmesh.envValue" -}}
{{- if kindIs "slice" . -}}
{{- $items := list -}}{{- range . -}}{{- $items = append $items (include "carmesh.envValue" .) -}}{{- end -}}
{{- join "," $items -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
The settings the chart computes for a daemon (addresses, ports, mounted files); the daemon's own
`settings` values override them. (dict "root" $ "key" key "d" descriptor "v" values)
*/}}
{{- define "carmesh.computedSettings" -}}
{{- $root := .root -}}{{- $v := .v -}}
host: 0.0.0.0
grpc_port: {{ $v.port }}
metrics_port: {{ $v.metricsPort }}
{{ include "carmesh.tlsSettings" . }}
{{- $registry := include "carmesh.address" (dict "root" $root "component" "registry-gateway" "port" $root.Values.registryGateway.port) }}
{{- $feature := include "carmesh.address" (dict "root" $root "component" "feature-service" "port" $root.Values.featureService.port) }}
{{- if eq .key "gateway" }}
detector_addrs: [{{ include "carmesh.address" (dict "root" $root "component" "detector" "port" $root.Values.detector.port) }}]
registry_addr: {{ $registry }}
ingestor_addr: {{ ternary (include "carmesh.address" (dict "root" $root "component" "ingestor" "port" $root.Values.ingestor.port)) "" $root.Values.ingestor.enabled | quote }}
feature_addr: {{ ternary $feature "" $root.Values.featureService.enabled | quote }}
trainer_addr: {{ ternary (include "carmesh.address" (dict "root" $root "component" "trainer" "port" $root.Values.trainer.port)) "" $root.Values.trainer.enabled | quote }}
tracker_addr: {{ ternary (include "carmesh.address" (dict "root" $root "component" "tracker" "port" $root.Values.tracker.port)) "" $root.Values.tracker.enabled | quote }}
{{- if or $v.apiKeys.existingSecret $v.apiKeys.entries }}
api_keys_file: /etc/carmesh/api-keys/api-keys
{{- end }}
{{- else if eq .key "registryGateway" }}
mlflow_tracking_uri: {{ $root.Values.external.mlflow.trackingUri | quote }}
cache_dir: /var/cache/carmesh/registry
{{- include "carmesh.mlflowSettings" $root }}
{{- else if eq .key "detector" }}
registry_addr: {{ $registry }}
model_cache_dir: /var/cache/carmesh/detector
kafka_bootstrap: {{ $root.Values.external.kafka.bootstrap | quote }}
kafka_idempotence: {{ $root.Values.external.kafka.idempotence }}
{{- if $v.gpu.enabled }}
providers: [CUDAExecutionProvider, CPUExecutionProvider]
{{- end }}
{{- else if eq .key "ingestor" }}
kafka_bootstrap: {{ $root.Values.external.kafka.bootstrap | quote }}
kafka_idempotence: {{ $root.Values.external.kafka.idempotence }}
{{- with $v.dataClaims }}
allowed_roots: [{{ range $i, $c := . }}{{ if $i }}, {{ end }}{{ $c.mountPath }}{{ end }}]
{{- end }}
{{- else if eq .key "tracker" }}
{{- $ext := $root.Values.external }}
kafka_bootstrap: {{ $ext.kafka.bootstrap | quote }}
postgres_dsn: {{ $ext.postgres.dsn | quote }}
redis_url: {{ $ext.redis.url | quote }}
{{- if $ext.postgres.passwordSecret.name }}
postgres_password_file: /etc/carmesh/secrets/postgres/password
{{- end }}
{{- if $ext.redis.passwordSecret.name }}
redis_password_file: /etc/carmesh/secrets/redis/password
{{- end }}
{{- else if eq .key "featureService" }}
{{- $ext := $root.Values.external }}
kafka_bootstrap: {{ $ext.kafka.bootstrap | quote }}
kafka_idempotence: {{ $ext.kafka.idempotence }}
postgres_dsn: {{ $ext.postgres.dsn | quote }}
redis_url: {{ $ext.redis.url | quote }}
{{- if $ext.postgres.passwordSecret.name }}
postgres_password_file: /etc/carmesh/secrets/postgres/password
{{- end }}
{{- if $ext.redis.passwordSecret.name }}
redis_password_file: /etc/carmesh/secrets/redis/password
{{- end }}
blob_store: {{ $ext.blobs.store }}
{{- if eq $ext.blobs.store "s3" }}
s3_bucket: {{ $ext.blobs.s3.bucket | quote }}
s3_prefix: {{ $ext.blobs.s3.prefix | quote }}
s3_endpoint_url: {{ $ext.blobs.s3.endpointUrl | quote }}
{{- else }}
blob_dir: /var/lib/carmesh/blobs
{{- end }}
{{- else if eq .key "trainer" }}
work_dir: /var/lib/carmesh/trainer
feature_addr: {{ $feature }}
registry_addr: {{ $registry }}
mlflow_tracking_uri: {{ $root.Values.external.mlflow.trackingUri | quote }}
tfjob_image: {{ include "carmesh.image" (dict "root" $root "image" $v.image "gpu" $root.Values.training.gpu.enabled) }}
tfjob_namespace: {{ $root.Release.Namespace }}
tfjob_checkpoint_claim: {{ include "carmesh.checkpointClaim" $root }}
{{- include "carmesh.mlflowSettings" $root }}
{{- with $root.Values.external.mlflow.credentialsSecret }}{{ if .name }}
tfjob_mlflow_secret: {{ .name | quote }}
tfjob_mlflow_password_key: {{ .passwordKey | quote }}
{{- end }}{{ end }}
{{- end }}
{{- end -}}

{{/* A daemon's environment: computed settings overridden by its `settings` values, then HOME. */}}
{{- define "carmesh.env" -}}
{{- $computed := include "carmesh.computedSettings" . | fromYaml -}}
{{- $settings := mustMergeOverwrite $computed (deepCopy (.v.settings | default dict)) -}}
{{- $prefix := .d.prefix -}}
{{- range $name := keys $settings | sortAlpha }}
- name: {{ printf "%s%s" $prefix (upper $name) }}
  value: {{ include "carmesh.envValue" (get $settings $name) | quote }}
{{- end }}
# Libraries (MLflow, Matplotlib) write caches under HOME: the root filesystem is read-only.
- name: HOME
  value: /tmp
{{- end -}}

{{/*
Readiness: grpc.health.v1 over the daemon's own port, with its mesh certificate when mesh TLS is
on (the kubelet's gRPC probe cannot present one). Liveness: the port accepts connections (a
detector waiting for its first model is alive but not ready).
*/}}
{{- define "carmesh.probes" -}}
readinessProbe:
  exec:
    command: [python, -m, kit.probe, --port, {{ .v.port | quote }}, --env-prefix, {{ .d.prefix }}]
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
livenessProbe:
  tcpSocket:
    port: grpc
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
{{- end -}}

{{- define "carmesh.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "carmesh.componentName" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/*
MLflow's basic auth (external.mlflow.credentialsSecret): the Secret's user and password keys as files,
read-only and 0400, in exactly the pods that talk to MLflow (registry gateway, trainer, training pods);
the daemons get the files' paths as settings (settings are literal, secrets are files).
*/}}
{{- define "carmesh.mlflowDir" -}}/etc/carmesh/secrets/mlflow{{- end -}}
{{- define "carmesh.mlflowSettings" -}}
{{- if .Values.external.mlflow.credentialsSecret.name }}
mlflow_username_file: {{ include "carmesh.mlflowDir" . }}/username
mlflow_password_file: {{ include "carmesh.mlflowDir" . }}/password
{{- end }}
{{- end -}}
{{- define "carmesh.mlflowMount" -}}
- {name: mlflow-credentials, mountPath: {{ include "carmesh.mlflowDir" . }}, readOnly: true}
{{- end -}}
{{- define "carmesh.mlflowVolume" -}}
{{- with .Values.external.mlflow.credentialsSecret }}
- name: mlflow-credentials
  secret:
    secretName: {{ .name | quote }}
    defaultMode: 0400
    items: [{key: {{ .usernameKey | quote }}, path: username}, {key: {{ .passwordKey | quote }}, path: password}]
{{- end }}
{{- end -}}
