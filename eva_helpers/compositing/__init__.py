"""Stage 1, the build: background photos + cut-outs -> composites, masks, depth labels -> zip shards."""
