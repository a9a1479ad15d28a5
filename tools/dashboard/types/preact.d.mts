// The vendored src/katar/ui/vendor/preact.mjs is Preact's own build: its own types, from the
// same version on npm (package.json).
export * from "preact";
