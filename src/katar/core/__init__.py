"""The queue model and rules, independent of HTTP and of storage."""
