"""Getting the rendered tree onto a host: plans (pure) and their application over SSH."""
