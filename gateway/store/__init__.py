"""Where tasks and images are kept: SQLite and a folder on one machine, PostgreSQL and S3 for
replicas; the task records' leases.
"""
