// The vendored src/katar/ui/vendor/hooks.mjs is Preact's hooks build: their own types.
export * from "preact/hooks";
