"""Data stores: DynamoDB for users and export jobs, PostgreSQL for memberships."""
