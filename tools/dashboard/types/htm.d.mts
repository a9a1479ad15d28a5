// The vendored src/katar/ui/vendor/htm.mjs is htm's own build: its own types.
export { default } from "htm";
