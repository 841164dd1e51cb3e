"""Container images: the catalog (data) and the generic build, push and base-image code."""
