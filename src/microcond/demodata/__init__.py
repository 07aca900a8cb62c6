"""The built-in demo data: emoji from the installed colour font on canvases of web-like shapes
and sizes, with class labels and object boxes."""
