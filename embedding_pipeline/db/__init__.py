"""The database: connections (URL resolution, the embedded server), the project schema (registry, bindings,
audit, alerts, eval reports, index builds) and the change queue."""
