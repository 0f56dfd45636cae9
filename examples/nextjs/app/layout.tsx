import type { ReactNode } from "react";

export const metadata = { title: "voxgate + Next.js" };

// No next/font/google or anything else fetched at build time: the build works offline.
export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui, sans-serif", margin: "2rem", maxWidth: 760 }}>{children}</body>
    </html>
  );
}
