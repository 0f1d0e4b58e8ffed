"""Generated modules of proto/sentinel/v1 (scripts/gen_proto.sh; do not edit them)."""
