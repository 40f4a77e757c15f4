"""Official MedCom StructureDefinitions, ValueSets and CodeSystems the validator ships (see SOURCES.md)."""
