"""The node-local sampling server and its client, LocalRpcDataSampler."""
