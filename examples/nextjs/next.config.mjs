/** @type {import("next").NextConfig} */
const nextConfig = {
  // The hook must survive strict mode's double mount (it is the App Router default; said here
  // so nobody turns it off to hide a leak).
  reactStrictMode: true,
};

export default nextConfig;
