"""Authentication and authorization: our CA, certificate and token checks, the policy and its audit trail."""
