"""Singer tap for Marketo activities: the whole history through the Bulk Activity Extract
API, fresh increments through Get Lead Activities (REST)."""
