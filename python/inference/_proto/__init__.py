"""Generated protocol code (see proto/generate.sh); edit the .proto, not these files."""
