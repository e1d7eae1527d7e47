{{/* Pieces of the training pods (templates/training.yaml). */}}
{{- define "carmesh.trainingContainer" -}}
image: {{ .image }}
imagePullPolicy: {{ .pullPolicy }}
env:
  - {name: PYTHONUNBUFFERED, value: "1"}
  - {name: MLFLOW_TRACKING_URI, value: {{ .root.Values.external.mlflow.trackingUri | quote }}}
  - {name: HOME, value: /tmp}
resources: {{ toYaml .resources | nindent 2 }}
securityContext: {{ toYaml .root.Values.securityContext | nindent 2 }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  - {name: checkpoints, mountPath: /var/lib/carmesh}
  {{- if .root.Values.meshTLS.enabled }}
  - {name: mesh-tls, mountPath: /etc/carmesh/mesh, readOnly: true}
  {{- end }}
  {{- if .root.Values.external.mlflow.credentialsSecret.name }}
  {{- include "carmesh.mlflowMount" .root | nindent 2 }}
  {{- end }}
{{- end }}
{{- define "carmesh.trainingPod" -}}
securityContext: {{ toYaml .root.Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{ toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir: {sizeLimit: 2Gi}
  - name: checkpoints
    persistentVolumeClaim: {claimName: {{ include "carmesh.checkpointClaim" .root }}}
  {{- if .root.Values.meshTLS.enabled }}
  - name: mesh-tls
    {{- /* Training pods register models and fetch snapshots as the trainer does: its identity. */}}
    secret: {secretName: {{ include "carmesh.meshSecretName" (dict "root" .root "component" "trainer") }}, defaultMode: 0400}
  {{- end }}
  {{- if .root.Values.external.mlflow.credentialsSecret.name }}
  {{- /* The chief logs its run and registers the model in MLflow as the trainer does: its user. */}}
  {{- include "carmesh.mlflowVolume" .root | trim | nindent 2 }}
  {{- end }}
{{- $t := .root.Values.training }}
{{- $nodeSelector := $t.nodeSelector }}
{{- $tolerations := $t.tolerations }}
{{- if $t.gpu.enabled }}
{{- $nodeSelector = merge (deepCopy $t.gpu.nodeSelector) $t.nodeSelector }}
{{- $tolerations = concat $t.tolerations $t.gpu.tolerations }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations: {{ toYaml . | nindent 2 }}
{{- end }}
{{- end }}
