#!/usr/bin/env bash
# The work of cluster/kuberay/rayjob.yaml, run by the Ray job's driver on the head of the cluster
# (KubeRay submits this one command in HTTPMode: no submitter pod, and no `a && b` entrypoint of
# which KubeRay's default mode submits only the first part, kuberay issues 3802 and 3929).
# Every command is itself Ray work spread over the cluster: collection tasks on the CPU nodes,
# training on the GPU nodes, probes and rollouts as Ray actors and tasks. Data, runs, labels and
# reports live on object storage: nodes share no disk.
#   RAYLAM_STORAGE   where everything goes, e.g. s3://BUCKET/raylam (set in runtimeEnvYAML)
# Each step resumes when the job is retried (backoffLimit): finished shards are skipped, `raylam
# train` skips every stage whose artifact records its identity (a finished relabeling included:
# nothing is retrained or relabeled) and resumes a cut-off one from its checkpoint, and finished
# rollout episodes are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RAYLAM_STORAGE:?set RAYLAM_STORAGE (e.g. s3://BUCKET/raylam) in the RayJob runtimeEnvYAML env_vars}"

raylam collect --config configs/cheetah_run_paper.yaml \
    collect.output="$RAYLAM_STORAGE/cheetah_run" collect.num_workers=512 collect.progress=false
raylam train --config configs/laom_sup.yaml \
    train.dataset="$RAYLAM_STORAGE/cheetah_run" train.storage_path="$RAYLAM_STORAGE/runs" \
    train.num_workers=8 train.use_gpu=true
raylam evaluate --config configs/laom_sup.yaml \
    train.dataset="$RAYLAM_STORAGE/cheetah_run" train.storage_path="$RAYLAM_STORAGE/runs" \
    evaluate.output="$RAYLAM_STORAGE/runs/laom_sup_eval" evaluate.probe.use_gpu=true evaluate.probe.num_actors=4
