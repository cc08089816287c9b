"""Complete audits on real data, each with its model recipe and audit YAML."""
