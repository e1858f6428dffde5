"""Users, organizations, projects and service accounts."""
