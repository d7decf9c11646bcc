"""Input datasets: URIs, staging and manifests (what files, how large, which checksums)."""
