"""napari plugin of medsam (npe2): reader, writer, sample data and the Segment Anything widget.

Contributions are declared in ``napari.yaml``; nothing is imported here so that napari can
discover the plugin without loading Qt widgets, torch or the model.
"""
