# Sourced by train.sh and eval.sh (from the project root): sets `data` to RouteLLM's data
# folder (../shared/data/routellm or $LLM_GATEWAY_SHARED/data/routellm), read in place.
data=""
for d in "${LLM_GATEWAY_SHARED:-}" ../shared /work/shared; do
  if [ -n "$d" ] && [ -d "$d/data/routellm" ]; then data="$d/data/routellm"; break; fi
done
[ -n "$data" ] || { echo "RouteLLM data not found: set LLM_GATEWAY_SHARED to the folder holding data/routellm" >&2; exit 1; }
