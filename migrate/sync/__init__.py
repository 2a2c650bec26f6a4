"""Live sync: capture keyspace events, bulk copy, then follow every change until stopped."""
