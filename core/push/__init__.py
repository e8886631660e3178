"""The morning push: devices, FCM HTTP v1 client, the sender and its reads (docs/CONFIGURATION.md)."""
