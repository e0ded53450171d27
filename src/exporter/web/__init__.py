"""Static files of the self-service page (package data)."""
