"""The HTTP API: routers for FHIR messaging, municipal documents, operators, dry runs and health."""
