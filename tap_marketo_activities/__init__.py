"""Singer tap for Marketo activities through the Bulk Activity Extract API."""
