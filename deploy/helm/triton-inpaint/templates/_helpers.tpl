{{/* Names and labels shared by every object of the chart. */}}
{{- define "triton-inpaint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triton-inpaint.fullname" -}}
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

{{- define "triton-inpaint.triton" -}}
{{- printf "%s-triton" (include "triton-inpaint.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service: one DNS name resolving to every ready Triton pod. */}}
{{- define "triton-inpaint.tritonHeadless" -}}
{{- printf "%s-triton-headless" (include "triton-inpaint.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The gateways' gRPC target: the headless Service's fully qualified name, resolved by gRPC itself. */}}
{{- define "triton-inpaint.tritonTarget" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "triton-inpaint.tritonHeadless" .) .Release.Namespace .Values.clusterDomain (int .Values.triton.ports.grpc) -}}
{{- end -}}

{{- define "triton-inpaint.tritonAdminSecret" -}}
{{- default (printf "%s-triton-admin" (include "triton-inpaint.fullname" .)) .Values.triton.adminSecret.existingSecret -}}
{{- end -}}

{{- define "triton-inpaint.gateway" -}}
{{- printf "%s-gateway" (include "triton-inpaint.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triton-inpaint.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels: a component is "triton" or "gateway". */}}
{{- define "triton-inpaint.selector" -}}
app.kubernetes.io/name: {{ include "triton-inpaint.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "triton-inpaint.repositoryClaim" -}}
{{- default (printf "%s-models" (include "triton-inpaint.fullname" .)) .Values.triton.modelRepository.pvc.existingClaim -}}
{{- end -}}

{{- define "triton-inpaint.gatewayClaim" -}}
{{- default (printf "%s-gateway-data" (include "triton-inpaint.fullname" .)) .Values.gateway.storage.existingClaim -}}
{{- end -}}

{{/* Where Triton reads models: the mounted volume or the object-store URL. */}}
{{- define "triton-inpaint.repository" -}}
{{- if eq .Values.triton.modelRepository.type "pvc" -}}
/models
{{- else -}}
{{- .Values.triton.modelRepository.url -}}
{{- end -}}
{{- end -}}

{{/* Models whose requests are inpainting requests: the ensembles inpaint_NAME, not their steps. */}}
{{- define "triton-inpaint.requestModels" -}}
model=~"inpaint_.+",model!~"inpaint_(pre|post)process"
{{- end -}}

{{/* The runtime the exported networks run on (docs/runtimes.md): triton.runtime, else gpu-torch on GPU
pods and cpu on CPU pods. */}}
{{- define "triton-inpaint.runtime" -}}
{{- $t := .Values.triton -}}
{{- $t.runtime | default (ternary "gpu-torch" "cpu" $t.gpu.enabled) -}}
{{- end -}}

{{/* Whether Triton pods build TensorRT plans for their GPU before serving (an init container). */}}
{{- define "triton-inpaint.buildsEngines" -}}
{{- if and (eq (include "triton-inpaint.runtime" .) "gpu-tensorrt") (eq .Values.triton.modelRepository.type "pvc") .Values.triton.gpu.enabled -}}
true
{{- end -}}
{{- end -}}
