"""redis-migrate: move a production Redis into ElastiCache Serverless, verifiably and resumably."""

__version__ = "0.1.0"
