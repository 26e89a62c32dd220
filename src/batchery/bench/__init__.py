"""`batchery bench`: a light load generator for any HTTP server, with reports as tables, JSON and plots."""
