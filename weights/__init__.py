"""The shipped MS-ODENet models and the content encoder, each with its model card; installed with
regode as the package data ``regode.weights`` (found through importlib.resources)."""
