"""The output tables: their schema, DuckDB views and queries, renders, COCO export."""
