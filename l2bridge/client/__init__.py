"""The client role: exit selection and failover, the frame pump between TAP and link,
the client process."""
