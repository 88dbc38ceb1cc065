"""index: the catalog, the vector stores, ingest, search and scans (`latentsight.index`)."""
