import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Nothing voxgate-specific: the package's worklets load without configuration.
export default defineConfig({ plugins: [react()] });
