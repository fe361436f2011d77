"""Wire contract of the federation: the .proto, its generated code and typed message dataclasses."""
