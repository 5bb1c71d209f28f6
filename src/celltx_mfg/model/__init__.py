"""The SimPy model: plant resources, GMP rules and the patient journey."""
